"""The ``promptq`` command: batches of prompts from JSONL files (``producer.cli.batch``), their
progress and results, and single jobs (``producer.cli.commands``). It goes through
``producer.SyncProducer``'s public methods."""

from producer.cli.commands import main

__all__ = ["main"]
