"""Config: the schema and resolvers, redaction, config identity.

Importing any of it registers the schema (`train_schema`) and the resolvers with Hydra, which
conf/train.yaml needs before it composes.
"""

from sweeplab.config import resolvers, schema  # noqa: F401
