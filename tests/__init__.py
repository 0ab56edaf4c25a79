"""The test suite, in tiers: unit/, integration/, cluster/; shared helpers in support/."""
