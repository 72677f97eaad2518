"""Operator commands: doctor, status, checkpoint, warm, verify, flush (one module each)."""
