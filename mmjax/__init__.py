"""mmjax: transfer learning across modalities and domains in JAX/Flax."""
__version__ = "0.1.0"
