"""Domain services: what routes, jobs and the CLI call. They never render anything."""
