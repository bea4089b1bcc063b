"""What the API and the workers must agree on: settings, keys, events, jobs, errors."""
