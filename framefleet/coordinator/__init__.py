"""The stateless supervisor of the actor fleet (issue: coordinator)."""
