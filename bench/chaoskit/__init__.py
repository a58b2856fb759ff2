"""The parts of bench/chaos.py: `rig` (the fleet a run strikes: Ray cluster, Valkey, the
relay that cuts the network, coordinators, videos, model), `faults` (each fault, as a
function of the rig) and `run` (one run: enqueue, faults on a seeded schedule, the end
observed, the history checked)."""
