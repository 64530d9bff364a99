"""Generation: the continuous-batching engine, its stop rules, the public calls, and the vLLM backend."""
