"""The snapshot stages and format of akisnap, usable without Kafka."""

__version__ = "0.1.0"
