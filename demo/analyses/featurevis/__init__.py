"""``python -m demo.featurevis``: feature visualization by optimisation, in onnxruntime and NumPy (no torch).

    python -m demo.featurevis conv5_3/7 conv5_3/276 class/Bengal --out out/fv
    python -m demo.featurevis conv5_3/all --steps 256 --size 96 --resume --out out/fv
    python -m demo.featurevis conv5_3/7 --randomize conv5_3,head --out out/fv_random
    python -m demo.featurevis conv4_3/12 --copies 4 --out out/fv_diverse

Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017 (doi:10.23915/distill.00007), with Lucid's
defaults: an image is optimised to maximise a target (a channel's mean, one position of a channel, a class logit;
``objective``). The image is parametrised in the Fourier domain, frequencies scaled by 1/f (decay power 1, initial
sd 0.01), colours decorrelated with Lucid's 3x3 matrix and squashed by a sigmoid (``param``); each step sees it
through a random transformation (pad 12 grey, jitter 8, scale 0.90-1.10, rotate -10..10 degrees, jitter 4;
``transforms``); Adam, lr 0.05 (``optimize``). A conv target is the channel's value before its ReLU, so that a unit
silent on the starting image still gets a gradient.

The forward pass runs in onnxruntime; the gradient to the input is the project's NumPy backward stage with the
"gradient" rule, and the backward of the transformations (the exact adjoint of the bilinear resampling included)
and of the parametrization is NumPy too. Several targets go through one batch per step.

Files: ``OUT/LAYER/CCCC.png`` (``OUT/conv5_3/0007.png``, ``OUT/class/03.png``; ``_yY_xX`` for a position,
``_min`` for a minimised target) and a JSON beside each: the target, the objective at the first and the last
step and on the final picture, whether the picture came back flat, the settings, the seed. With ``--copies N``
the PNG holds the N pictures side by side. ``--resume`` skips targets whose JSON (with the same settings) exists.
"""
