"""megatron-core's GPTModel (local spec) on the CPU, holding our Transformer's weights converted by
:mod:`lmhpc.exchange.megatron`; prints the largest logit difference as JSON (not a test module).

Run as ``python -m tests.train.megatron_gpt_probe N_HEADS N_KV_HEADS TIED``. One process, world size 1 on
gloo with megatron's model-parallel state initialised. What runs is megatron-core's own code: the
embedding, every decoder layer (RMSNorm, fused ``linear_qkv``, its rotary embedding, ``linear_proj``, the
SwiGLU ``linear_fc1``/``linear_fc2`` MLP, residuals), the final norm and the output layer; two pieces that
megatron-core places on CUDA unconditionally are replaced: the core attention kernel (its
``DotProductAttention`` takes its score buffer and dropout RNG from CUDA) by PyTorch's causal
``scaled_dot_product_attention`` on the same query/key/value, and the rotary table, computed with the
model's own ``get_freqs_non_repeated`` (its ``get_emb`` moves the frequencies to CUDA first).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F


def main() -> None:
    warnings.simplefilter("ignore")
    n_heads, n_kv, tied = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import MegatronModule

    from lmhpc.exchange.megatron import from_megatron, to_megatron
    from lmhpc.model.transformer import Transformer
    from lmhpc.train.config import PretrainConfig
    from lmhpc.train.megatron import translate

    parallel_state.initialize_model_parallel(1, 1)

    class SDPAttention(MegatronModule):
        """Causal attention of megatron's [s, b, heads, d] query/key/value → [s, b, heads·d]."""

        def __init__(self, config, layer_number, attn_mask_type, attention_type, **_):
            super().__init__(config=config)

        def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return out.permute(2, 0, 1, 3).reshape(out.shape[2], out.shape[0], -1)

    cfg = PretrainConfig()
    cfg.train.device = "cuda"
    cfg.model = dataclasses.replace(cfg.model, dim=64, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv, max_seq_len=64,
                                    rope_theta=500000.0, norm_eps=1e-6, tie_embeddings=tied)
    kw = translate.transformer_config_kwargs(cfg, 1)
    kw["use_cpu_initialization"] = True
    from megatron.core.transformer.transformer_config import TransformerConfig

    spec = translate.layer_spec(cfg, "local")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    vocab = 96
    model = GPTModel(config=TransformerConfig(**kw), transformer_layer_spec=spec,
                     **translate.gpt_model_kwargs(cfg, vocab)).eval()
    args = dataclasses.replace(cfg.model, vocab_size=vocab)
    ours = Transformer(args, init_seed=3).eval()
    state = {k: v.detach() for k, v in ours.state_dict().items()}
    missing, unexpected = model.load_state_dict(to_megatron(state, args), strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    tokens = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model.embedding(input_ids=tokens, position_ids=None)  # [s, b, h]
        freqs = model.rotary_pos_emb.get_freqs_non_repeated(tokens.shape[1])
        rotary = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]
        h = model.decoder(hidden_states=h, attention_mask=None, rotary_pos_emb=rotary)
        logits, _ = model.output_layer(h, weight=model.shared_embedding_or_output_weight() if tied else None)
        theirs = logits.transpose(0, 1)
        reference = ours(tokens)
    back = from_megatron({k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}, args)
    exact = back.keys() == {k for k in state if not (tied and k == "output.weight")} and all(
        torch.equal(back[k], state[k]) for k in back)
    # the layout of megatron's distributed checkpoints: the whole tensors its sharded state dict describes
    # (what load_plain_tensors returns: layers stacked, norms under Transformer Engine names)
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    plain: dict[str, torch.Tensor] = {}
    for item in model.sharded_state_dict().values():
        shards = item.build() if isinstance(item, ShardedTensorFactory) else item
        for sh in shards if isinstance(shards, list) else [shards]:
            if not isinstance(sh, ShardedTensor):
                continue
            whole = plain.setdefault(sh.key, torch.zeros(sh.global_shape))
            index = tuple(slice(o, o + 1) for o in sh.global_offset[:sh.prepend_axis_num]) + tuple(
                slice(o, o + n) for o, n in zip(sh.global_offset[sh.prepend_axis_num:], sh.data.shape))
            whole[index] = sh.data.detach().reshape(whole[index].shape)
    from lmhpc.exchange.megatron import unstack_layers

    from_ckpt = from_megatron(unstack_layers(plain, args.n_layers), args)
    layout_exact = from_ckpt.keys() == back.keys() and all(torch.equal(from_ckpt[k], state[k]) for k in from_ckpt)
    print(json.dumps({"missing": missing, "unexpected": list(unexpected), "checkpoint_layout_exact": layout_exact,
                      "max_abs_diff": (theirs - reference).abs().max().item(),
                      "max_abs_logit": reference.abs().max().item(), "state_round_trip_exact": exact}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
