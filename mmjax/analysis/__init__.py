"""How far apart two domains are in a representation: proxy A-distance and t-SNE pictures.

`python -m mmjax.analysis --workdir=RUN` writes RUN/pad.json and RUN/tsne.png for a trained run's
source and target data, before (raw inputs) and after (the model's `features`) adaptation.
"""
