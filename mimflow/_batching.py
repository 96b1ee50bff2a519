"""Functions with a batching rule of their own that stay differentiable.

`jax.custom_batching.custom_vmap` gives a function its own `vmap`, but JAX cannot
differentiate such a function in reverse mode (`jax.grad` fails to linearize it);
`with_batching_rule` wraps one in a `jax.custom_jvp` whose tangent is that of a plain
function with the same values, which reverse mode transposes. Used for the flow step's two products
(`mimflow._products`) and for fits `vmap`ped over starts sharing the data
(`mimflow._fits`).
"""

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import SymbolicZero


def with_batching_rule(plain, rule, derivative=None):
    """`plain` (a function of arrays and pytrees of arrays) whose `vmap` is
    `rule(axis_size, in_batched, *args)` (the arguments with their batch axes first,
    `in_batched` their pytree of booleans; every output batched on axis 0), and which
    is differentiated as `derivative` (default `plain`), a function with the same
    values: forward mode on the arguments with nonzero tangents, reverse mode by
    transposing it."""
    derivative = plain if derivative is None else derivative
    batched = custom_vmap(plain)

    @batched.def_vmap
    def _rule(axis_size, in_batched, *args):
        out = rule(axis_size, in_batched, *args)
        return out, jax.tree.map(lambda _: True, out)

    @jax.custom_jvp
    def function(*args):
        return batched(*args)

    def jvp(primals, tangents):
        leaves, tree = jax.tree.flatten(primals)
        tangent_leaves = jax.tree.leaves(tangents, is_leaf=lambda t: isinstance(t, SymbolicZero))
        live = [i for i, t in enumerate(tangent_leaves) if not isinstance(t, SymbolicZero)]

        def of_live(*values):
            args = list(leaves)
            for i, value in zip(live, values, strict=True):
                args[i] = value
            return derivative(*jax.tree.unflatten(tree, args))

        out = function(*primals)
        if not live:
            return out, jax.tree.map(jnp.zeros_like, out)
        return out, jax.jvp(of_live, [leaves[i] for i in live], [tangent_leaves[i] for i in live])[1]

    function.defjvp(jvp, symbolic_zeros=True)
    return function
