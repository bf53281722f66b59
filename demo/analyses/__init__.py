"""The analyses, one module or small package each, every one with its command ``python -m demo.<name>``.

``dataset`` streams a data set through the network (decoding threads, per-channel maxima straight from
onnxruntime). The paper's figures: ``atlas/`` the top-9 atlas and its static site (Fig. 2; ``demo.mine``,
``demo.atlas_site``), ``invariance`` the invariance curves (Fig. 5), ``health/`` the architecture diagnosis
(Fig. 6; ``demo.health``), ``occlusion`` the occlusion sensitivity (Fig. 7), ``correspondence/`` the
correspondence of object parts (Table 1, Fig. 8). Beyond the paper: ``sanity`` (``demo.sanity``), the
randomization checks of Adebayo et al. 2018 for every backward rule; ``evidence/`` the class-evidence methods
(Grad-CAM, SmoothGrad, Integrated Gradients ...) and their faithfulness (``demo.faithfulness``). ``figures`` holds
the matplotlib helpers they share.
"""
