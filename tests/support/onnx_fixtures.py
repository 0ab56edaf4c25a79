"""A tiny hand-built ONNX graph with the ranking model's signature.

It scores a candidate by its co-visitation feature, which makes expected
rankings derivable from the inputs. It stands in for the trained model only
where a test is about the runtime around the model, never about its quality.
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from udfs.features import DENSE_FEATURES


def covisit_scorer(path: Path, seq_len: int = 50) -> Path:
    f = len(DENSE_FEATURES)
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["U", seq_len])
           for n in ("hist_item", "hist_cat", "hist_beh", "hist_gap")]
    ins += [helper.make_tensor_value_info(n, TensorProto.INT64, ["B"]) for n in ("cand_user", "cand_item", "cand_cat")]
    ins += [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", f])]
    idx = helper.make_tensor("idx", TensorProto.INT64, [1], [DENSE_FEATURES.index("covisit")])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Gather", ["dense", "idx"], ["g"], axis=1),
             helper.make_node("Squeeze", ["g", "axes"], ["score"])]
    out = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"])]
    graph = helper.make_graph(nodes, "covisit_scorer", ins, out, [idx, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
