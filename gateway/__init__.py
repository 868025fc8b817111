"""gateway: the public entry; auth, rate limits, chat sessions in Redis, routing to runtimes."""
