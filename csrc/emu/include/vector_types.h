// SIMT emulator stand-in for the CUDA vector types header (see emu/cuda_emu.h).
#pragma once
#include "emu/cuda_emu.h"
