// SIMT emulator stand-in for the CUDA runtime header (see emu/cuda_emu.h).
#pragma once
#include "emu/cuda_emu.h"
