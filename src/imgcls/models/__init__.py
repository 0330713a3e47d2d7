from .registry import ModelSpec, create_model, get_spec, list_models, register

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register"]
