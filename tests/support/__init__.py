"""Helpers the tests share: job and store fixtures, fault and savepoint jobs, poison records, vectors."""
