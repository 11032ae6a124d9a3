"""The OpenAI wire types, one module per resource; common.py holds what they share."""
