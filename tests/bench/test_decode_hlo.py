"""bench/decode_hlo.py: the sampler's decode loop reads the weights as they are, with no per-step cast.

Issue 21 asked whether every Dense's float32 -> bfloat16 kernel cast runs at each decode step. On the
CPU XLA hoists those loop-invariant converts out of the while loop: this keeps that true, and checks
that the counter does see converts that cannot be hoisted (so a zero means something).
"""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "decode_hlo.py"
_spec = importlib.util.spec_from_file_location("decode_hlo", _PATH)
decode_hlo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode_hlo)


def test_bf16_decode_loop_has_no_weight_converts():
    r = decode_hlo.main(["--model", "tiny", "--dtype", "bfloat16"])
    assert r["loop_dots"] > 0  # the loop found is the decode loop
    assert r["loop_weight_converts"] == 0
    assert r["outside_loop_weight_converts"] > 0  # the casts exist, once, before the loop


def test_counts_converts_that_stay_in_a_loop():
    # The weight changes every trip, so its cast cannot leave the loop: the counter must see it.
    def f(w_32x48, x_5x32):
        def body(c):
            i, w, y = c
            return i + 1, w * 1.5, y + x_5x32.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, w_32x48, jnp.zeros((5, 48), jnp.bfloat16)))[2]

    w, x = jnp.ones((32, 48)), jnp.ones((5, 32))
    hlo = jax.jit(f).lower(w, x).compile().as_text()
    r = decode_hlo.loop_converts(hlo, [w.shape])
    assert r["loop_dots"] >= 1
    assert r["loop_weight_converts"] >= 1


def test_counts_a_convert_of_a_reshaped_weight():
    # A backend may convert a weight after a reshape (inside a GEMM fusion): same size, other shape.
    # Here the loop holds a [32, 256] view of a [64, 128] weight; only the size can match it.
    def f(w_32x256, x_5x32):
        def body(c):
            i, w, y = c
            return i + 1, w * 1.5, y + x_5x32.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, w_32x256, jnp.zeros((5, 256), jnp.bfloat16)))[2]

    hlo = jax.jit(f).lower(jnp.ones((32, 256)), jnp.ones((5, 32))).compile().as_text()
    assert decode_hlo.loop_converts(hlo, [(64, 128)])["loop_weight_converts"] >= 1
    assert decode_hlo.loop_converts(hlo, [(64, 64)])["loop_weight_converts"] == 0  # another size: none
