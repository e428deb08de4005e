"""Shared by every stage: file I/O and input errors, text utilities, the task registry, scoring, the chat schema,
model identity."""
