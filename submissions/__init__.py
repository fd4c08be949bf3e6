"""submissions: leaderboard file formats (pstage2, klue, semeval, generic), their writers and a checker.

Torch-free.
"""

from ._formats import (FORMATS, check_submission, check_text, predicted_labels, render_submission, test_ids_of,
                       write_submission)

__all__ = ["FORMATS", "check_submission", "check_text", "predicted_labels", "render_submission", "test_ids_of",
           "write_submission"]
