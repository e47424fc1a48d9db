"""The error raised for invalid benchmark inputs."""


class BenchmarkInputError(ValueError):
    """A benchmark input (folder, file, label table or option) is missing or invalid.

    The message names the value and the fix; the CLI prints it without a traceback.
    """
