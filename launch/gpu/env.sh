#!/usr/bin/env bash
# XLA / NCCL settings for H100 (Hopper) clusters, sourced by single_node.sh and slurm.sbatch.
# Every value is a default: anything already set in the environment wins.
# The XLA flags below exist in the pinned jaxlib (tests/launch checks that XLA accepts them).

# Let JAX preallocate 92% of each GPU's memory up front: one big arena, no fragmentation
# from growing it, and room left for cuDNN/NCCL workspaces outside it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

xla=(
  # Schedule collectives (FSDP all-gathers, gradient reduce-scatters) to overlap with the
  # matmuls around them instead of running back to back.
  --xla_gpu_enable_latency_hiding_scheduler=true
  # cuBLAS (not Triton) for the GEMMs: faster for the large bf16 matmuls of this model on H100.
  --xla_gpu_enable_triton_gemm=false
  # In the scanned layer loop, start the next layer's all-gather / this layer's
  # reduce-scatter one iteration early, so they hide behind the layer's compute.
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  # Double-buffer the scan over layers so the prefetched weights have a buffer to land in.
  --xla_gpu_enable_while_loop_double_buffering=true
  # Combine the many small per-parameter collectives into ~128 MiB messages: fewer NCCL
  # launches, better bandwidth across nodes.
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
  # Our remat policy (model.remat) decides what is recomputed; XLA's own rematerialisation
  # pass would otherwise recompute more when it thinks memory is short.
  --xla_disable_hlo_passes=rematerialization
)
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }${xla[*]}"

# NCCL: use NVLink SHARP on NVSwitch systems (H100 SXM) for intra-node reductions.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-1}
# GPUDirect RDMA between the NIC and GPU memory when they share a PCIe host bridge.
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
# Keep each ring on the NIC of its GPU rail (rail-optimised fabrics, e.g. 8 x 400G InfiniBand).
export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-0}
# Two queue pairs per connection spread traffic over more InfiniBand paths (adaptive routing).
export NCCL_IB_QPS_PER_CONNECTION=${NCCL_IB_QPS_PER_CONNECTION:-2}
# Warnings only; set NCCL_DEBUG=INFO to see the chosen transports when tuning.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Site-specific, so not set here: NCCL_SOCKET_IFNAME / NCCL_IB_HCA (which interfaces to use).
