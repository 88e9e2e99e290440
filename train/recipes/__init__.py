"""Complete training recipes built from the trainer's parts: the toy task and the demo judge."""
