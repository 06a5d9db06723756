"""Support shared by the tests, the benchmarks and the scripts.

Not part of the installed package: `support.reference` holds the reference
implementations used as oracles (official SAM, with the stubs they need),
`support.fixtures` the tiny seeded configurations and pictures.
"""
