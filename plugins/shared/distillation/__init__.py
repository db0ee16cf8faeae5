"""Distillation's building blocks: the loss (``loss.DistillationLoss``) and the teacher-output cache
(``teacher_cache.TeacherCache``), shared by the ``distill`` and ``qad`` stages and public to third parties."""
