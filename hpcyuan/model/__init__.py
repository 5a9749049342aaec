"""The Yuan 2.0 / Yuan 2.0-M32 model: stages, init, loading, parameter and FLOP counts.

See docs/model.md for every parameter name, shape and formula.
"""

from hpcyuan.model.counting import ParameterCount, count_parameters, training_flops_per_token
from hpcyuan.model.yuan import (DecoderLayer, YuanStage, build_model, init_tensor, model_tensor_names,
                                param_groups)

__all__ = ["DecoderLayer", "ParameterCount", "YuanStage", "build_model", "count_parameters", "init_tensor",
           "model_tensor_names", "param_groups", "training_flops_per_token"]
