"""What the tests and the benchmarks share: free ports, state directories the postgres OS user can reach,
copies of the program, throwaway stacks, and the review's "before" database."""
