"""The error users see. Every layer raises it (or a subclass) for bad input; the command line
prints its message and exits 1 instead of a traceback."""


class FeaturebankError(Exception):
    """Bad input or state the user can fix; the message names the file or field and what to do."""


class OptionError(FeaturebankError, ValueError):
    """An option (a parameter) has a value it cannot take.

    The message names the parameter (``batch_size must be an int >= 1, got 0``);
    :attr:`parameter` holds its name and :attr:`related` the other parameters the message
    names, so the command line can print its own flag names instead
    (:meth:`with_names`). It is also a ``ValueError``, as in scikit-learn.
    """

    def __init__(self, parameter: str, problem: str, *, owner: str | None = None,
                 related: tuple[str, ...] = ()):
        self.parameter = parameter
        self.problem = problem
        self.owner = owner
        self.related = tuple(related)
        super().__init__(f"{parameter} {problem}")

    def with_names(self, names: dict[str, str]) -> str:
        """The message with parameter names replaced by ``names`` (e.g. command-line flags);
        names not in it stay as they are."""
        import re

        problem = self.problem
        for name in self.related:
            if name in names:
                problem = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", names[name], problem)
        return f"{names.get(self.parameter, self.parameter)} {problem}"
