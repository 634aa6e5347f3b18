"""``python -m services.trainer prior ...``: the training jobs without the rest of the CLI."""

from services.trainer.train_prior import train_app

train_app()
