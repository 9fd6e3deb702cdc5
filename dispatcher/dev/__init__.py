"""Development harness, not runtime: the demo, child processes for tests and benchmarks,
and a throwaway redis-server. Production workers never import it."""
