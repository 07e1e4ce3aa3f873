"""The trainer's side of vLLM: publishing adapters to the server, proving what it serves,
and (for local runs and tests) the server as a child process."""
