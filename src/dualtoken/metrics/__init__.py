"""Measurements the trainers log while they train and the evaluation stage reports: reconstruction quality
(PSNR, SSIM, image grids) and zero-shot classification / retrieval through a SigLIP-style model. Below the
trainers, tokenisation and evaluation, so each of them can use these without reaching sideways."""
