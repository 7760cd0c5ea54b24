"""Score matrices to a submission, in rooms: matrix, similarity -> runs -> ranking -> evaluation, review."""
