; Reads a generated Seatbelt profile with TinyScheme's reader (the interpreter that
; Seatbelt's SBPL is built on) and reports what a test compares: the number of
; forms, unknown parameters, and every regex and literal string as read back.
; Expects `workfence-params` (list of strings) and `workfence-profile-file`.

(define failures 0)
(define forms 0)

(define (known-param? s l)
  (cond ((null? l) #f)
        ; string=? is broken in some TinyScheme builds; interned symbols compare fine.
        ((eq? (string->symbol s) (string->symbol (car l))) #t)
        (else (known-param? s (cdr l)))))

(define (fail what x)
  (display "FAIL ") (display what) (display " ") (write x) (newline)
  (set! failures (+ failures 1)))

;; A string argument as the evaluator sees it: a literal, or the string-append of
;; literals that the generator writes for strings longer than the reader's buffer.
(define (flat x)
  (cond ((string? x) x)
        ((and (pair? x) (eq? (car x) 'string-append))
         (let loop ((l (cdr x)) (acc ""))
           (cond ((null? l) acc)
                 ((string? (car l)) (loop (cdr l) (string-append acc (car l))))
                 (else #f))))
        (else #f)))

(define (walk x)
  (if (pair? x)
      (begin
        (if (and (symbol? (car x)) (pair? (cdr x)) (flat (cadr x)))
            (cond ((eq? (car x) 'param)
                   (if (not (known-param? (cadr x) workfence-params)) (fail "unknown-param" (cadr x))))
                  ((eq? (car x) 'regex)
                   (display "REGEX ") (display (flat (cadr x))) (newline))
                  ((eq? (car x) 'literal)
                   (display "LITERAL ") (display (flat (cadr x))) (newline))))
        (walk (car x))
        (walk (cdr x)))))

(define port (open-input-file workfence-profile-file))
(let loop ((f (read port)))
  (if (not (eof-object? f))
      (begin
        (set! forms (+ forms 1))
        (if (and (= forms 1) (not (and (pair? f) (eq? (car f) 'version)))) (fail "first-form" f))
        (if (not (pair? f)) (fail "not-a-form" f))
        ; The shape of each top-level form: its operator and, for allow/deny, its
        ; first operation, so a test can compare the rule sequence of two profiles.
        (if (pair? f)
            (begin
              (display "HEAD ") (write (car f))
              (if (and (pair? (cdr f)) (symbol? (cadr f)))
                  (begin (display " ") (write (cadr f))))
              (newline)))
        (walk f)
        (loop (read port)))))
(display "FORMS ") (display forms) (newline)
(display "FAILURES ") (display failures) (newline)
(quit)
