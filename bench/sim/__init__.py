"""The parts of bench/simulate.py (the entry point, with the CLI and the run), one concern
each: `rates` (the plan: fleet size, slowdown and every rate of a simulated worker, in one
place), `workers` (the load generator: the simulated decode actors), `coordinator` (its
Redis calls every tick), `costs` (each call's Redis CPU alone, the timed sweeps), `fleet`
(one fleet size end to end), `summary` (its figures) and `report` (targets and the table)."""
