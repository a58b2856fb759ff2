"""Benchmarks: run apart from the tests (`framefleet bench NAME`)."""
