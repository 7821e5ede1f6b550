def where() -> str:
    return "sub.inner"
