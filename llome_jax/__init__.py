"""llome_jax: LLOME (a language model as a bilevel sequence optimiser) on Ehrlich functions, in JAX.

Shape suffixes on array names use one legend: B batch, L Ehrlich sequence length, V vocabulary (tokens
or states), D model width, F feed-forward width, H attention heads, E head width, T token positions,
S key/cache positions, G generated tokens, P population, N samples, C capacity, M motifs, K motif length.
"""
