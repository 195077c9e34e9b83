"""Load generation: the locustfile and its shapes (pure profiles + LoadTestShape classes), running
locust headless, and fixed-concurrency load with wrk or aiohttp."""
