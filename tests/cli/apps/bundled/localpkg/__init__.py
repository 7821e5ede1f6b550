from localpkg.sub.inner import where


def describe() -> str:
    return f"localpkg ({where()})"
