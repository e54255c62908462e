"""The batched engine: requests, the scheduler, the runner, the synchronous core and its driver."""
