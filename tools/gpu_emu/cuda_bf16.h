// Host stand-in for <cuda_bf16.h> in the GPU kernel emulation (tools/gpu_emu): storage only.
#pragma once
#include <cstdint>
struct __nv_bfloat16 { uint16_t bits; };
