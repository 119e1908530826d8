"""Build hook: cffi compiles the C core (csrc/) out-of-line when the package is installed."""
from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffi"])
