"""
The small-budget aids: what the CPU demo and the photo recipe add to the paper so that a small model
learns in minutes. None is in the paper or the official code; each is one config line, measured in
EXPERIMENTS.md ("What each aid bought"). A reader of the paper's model can skip this folder.

  routing_init (+ routing_scatter)  latents start reading patches: a small 1D tokenizer otherwise learns
                                    only the mean image for its first ~1,500 steps (routing.py)
  head_upsample = 4                 the pixel head predicts a 4x4 colour grid per patch, upsampled: a small
                                    model's patch is never a flat square (pixel_grid.py: the photo recipe)
  conv_out_padding = "replicate"    the last 3x3 conv repeats the border instead of reading black: a flat
                                    image stays flat to its edge (pixel_grid.py)
  codebook_init                     the generator's code embeddings start from the tokenizer's code vectors
                                    (codebook_init.py)
  python -m aids.refit              a k-means refit of a finished codebook (refit.py: the photo recipe)

Each file is imported only by a run whose config asks for its aid. The routing init and the codebook init
change only where training starts; the pixel-grid head changes the architecture, so the demo does without it.
Elsewhere, where they act: dead_code_restart (quantizer.CodebookUpkeep), brightness_shift and
saturation_shift (data.batches).
"""
