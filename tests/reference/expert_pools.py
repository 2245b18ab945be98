"""Cross-layer expert pools (docs/models.md#4-mega-moe-extensions) of a DeepSeek-V2/V3 config.json.

The MoE layers (layer >= first_k_dense_replace and layer % moe_layer_freq == 0, as in Hugging
Face's DeepSeek code) are counted in order and cut into consecutive groups of
`expert_sharing_group_size` (default 1; the last group may be shorter). Every layer of a group
routes, with its own gate and bias, over the routed experts stored under the group's first layer;
with `share_shared_experts` (default false) it also uses that layer's shared experts.
"""


def moe_layers(config):
    """The MoE layers, in order."""
    if not config.get("n_routed_experts"):
        return []
    first_moe, freq = config.get("first_k_dense_replace", 0), config.get("moe_layer_freq", 1)
    return [layer for layer in range(config["num_hidden_layers"]) if layer >= first_moe and layer % freq == 0]


def pools(config):
    """[[layer, ...]] the MoE layers of each pool; the first one stores the pool."""
    layers, size = moe_layers(config), config.get("expert_sharing_group_size", 1)
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def expert_owners(config):
    """{MoE layer: (layer storing its routed experts, layer storing its shared experts)}."""
    share = config.get("share_shared_experts", False)
    return {layer: (group[0], group[0] if share else layer) for group in pools(config) for layer in group}
