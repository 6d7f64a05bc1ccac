"""A synthetic cohort with a known true risk per patient; see :mod:`fusion.synthetic.cohort`.

Every patient here is invented. Nothing in this package is, or is derived from, real
patient data.
"""

from fusion.synthetic.cohort import SyntheticPatient, generate_cohort

__all__ = ["SyntheticPatient", "generate_cohort"]
