"""The contract between waitroom's services: message types, topic registry and the one codec.

Everything that crosses a topic is defined here and nowhere else.
"""
