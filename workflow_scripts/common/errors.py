"""Errors that name the offending file and what is wrong with it."""


class InputError(ValueError):
    """A bad input file: the message always names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
